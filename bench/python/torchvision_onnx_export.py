"""Exports torchvision's efficientnet_b0 features (+ global average pool) with torch.onnx.export,
the graph a Python user would run with ONNX Runtime: float32 NCHW [N, 3, 224, 224] in, [N, 1280]
out. weights=None: speed does not depend on the weights. Usage: torchvision_onnx_export.py OUT"""
import sys

import torch
import torchvision

model = torchvision.models.efficientnet_b0(weights=None).eval()
features = torch.nn.Sequential(model.features, model.avgpool, torch.nn.Flatten())
torch.onnx.export(
    features,
    torch.rand(1, 3, 224, 224),
    sys.argv[1],
    opset_version=13,
    input_names=["input"],
    output_names=["features"],
    dynamic_axes={"input": {0: "batch"}, "features": {0: "batch"}},
)
