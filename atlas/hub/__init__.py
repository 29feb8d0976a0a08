"""The Hugging Face Hub: one client (endpoint, token, retries, downloads), discovery, datasets."""
