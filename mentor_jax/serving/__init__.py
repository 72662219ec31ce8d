"""From a trained model to served recommendations.

  export.py   mentor-export: the ranked embeddings, seen items and source ids
              of a checkpoint as a folder of .npy files and a manifest
  cold.py     vectors of new items (features, no interactions) the way the
              model computes item vectors
  index.py    exact top-K on the device (blocked matmul + top-k) and an
              approximate HNSW index (faiss), seen items filtered
  server.py   mentor-serve: the HTTP service (FastAPI on uvicorn) with
              request batching onto the device
"""
