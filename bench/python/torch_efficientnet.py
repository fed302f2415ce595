"""EfficientNet-B0 features (+ global average pool) in PyTorch on this CPU: the rate a Python user
would get. torchvision's efficientnet_b0(weights=None): speed does not depend on the weights.
Prints one JSON line: {"torch": version, "threads": n, "interop": 1, "rates": {batch: images/s},
"peak_rss_mb": VmHWM}."""
import json
import resource
import sys
import time

import torch
import torchvision

threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
min_seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 8.0
torch.set_num_threads(threads)
torch.set_num_interop_threads(1)
model = torchvision.models.efficientnet_b0(weights=None).eval()
features = torch.nn.Sequential(model.features, model.avgpool, torch.nn.Flatten()).to(memory_format=torch.channels_last)
rates = {}
with torch.inference_mode():
    for batch in (1, 8, 32):
        x = torch.rand(batch, 3, 224, 224).to(memory_format=torch.channels_last)
        features(x)  # warm-up
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < min_seconds:
            out = features(x)
            n += batch
        assert out.shape == (batch, 1280)
        rates[batch] = n / (time.perf_counter() - start)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "interop": torch.get_num_interop_threads(), "rates": rates, "peak_rss_mb": peak}))
