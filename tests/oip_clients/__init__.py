"""The Open Inference Protocol tests' harness (harness.py, run by pytest in .venv) and the client
scripts the tests run in .venv-oip, where tritonclient and kserve live (protobuf<7)."""
