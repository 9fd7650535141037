"""The graph front end: canonicalisation, layer discovery, alignment (onnx-graphsurgeon based)."""
