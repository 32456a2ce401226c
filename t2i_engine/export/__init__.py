"""Export and runtimes: components exported to ONNX (ONNX Runtime, TensorRT) or compiled with
torch.compile, built once into a content-keyed cache (`t2i-engine build`), and put in place of
the PyTorch components for `generate --backend` and `bench --backend` (build.py)."""
