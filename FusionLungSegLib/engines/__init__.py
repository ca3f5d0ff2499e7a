"""What runs the network: devices and precision, torch, ONNX Runtime and OpenVINO, the HU threshold."""
