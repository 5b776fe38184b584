"""Running a trained model: the Predictor (torch or ONNX Runtime), shipped ONNX graphs, request batching, evaluation."""
