"""Scoring: chat templates, model loading, the engine, and the service that stores vectors."""
