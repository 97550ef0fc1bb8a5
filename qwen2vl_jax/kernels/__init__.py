"""Our Pallas kernels and wrappers of JAX's, one file per idea.

block_table.py        which key blocks each query block visits (shared bookkeeping)
block_sparse.py       our block-sparse segment attention: entry point + custom VJP
block_sparse_tpu.py   its Mosaic kernels (scalar-prefetched block ranges)
block_sparse_gpu.py   its Triton kernels (block ranges as loop bounds)
splash.py             JAX's TPU splash attention behind our signature
pallas_gpu.py         JAX's Pallas-Triton mha behind our signature
cudnn.py              cuDNN, only where its masking is exactly ours
mesh.py               shard_map of any of them over the mesh in context
common.py             static config, sequence and head_dim padding

Submodules are imported where used, so importing the model does not import Pallas.
"""
