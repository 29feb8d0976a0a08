"""A local Hugging Face Hub over HTTP for tests and the offline demo (see `server`)."""

from atlas.testing.hub.faults import Fault, FaultPlan, RequestRecord
from atlas.testing.hub.repos import RepoSpec, discover
from atlas.testing.hub.server import LocalHub, main

__all__ = ["Fault", "FaultPlan", "LocalHub", "RepoSpec", "RequestRecord", "discover", "main"]
