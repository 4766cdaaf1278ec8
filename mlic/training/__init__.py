"""Training and testing of the method's stages (tools/train.py, tools/test.py, the demo)."""
