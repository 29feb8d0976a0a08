"""The KL geometry: vector math, exact and FAISS nearest neighbours, 2-D maps."""
