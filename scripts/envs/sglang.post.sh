# Runs inside the fresh SGLang environment: the engine package without its GPU dependencies.
python -m pip install -q --no-deps sglang==0.5.23
