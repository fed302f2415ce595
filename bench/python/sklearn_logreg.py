"""scikit-learn's LogisticRegression on the features our head was trained on (same split), as
the reference a Python user would reach for. Arguments: a folder with X_train.npy, y_train.npy,
X_test.npy, y_test.npy (float32). Prints one JSON line."""
import json
import sys
import time

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

folder = sys.argv[1]
max_iter = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
load = lambda name: np.load(f"{folder}/{name}.npy")
X_train, X_test = load("X_train"), load("X_test")
y_train, y_test = load("y_train").ravel().astype(int), load("y_test").ravel().astype(int)
model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter))
start = time.perf_counter()
model.fit(X_train, y_train)
fit_seconds = time.perf_counter() - start
accuracy = float((model.predict(X_test) == y_test).mean())
n_iter = int(model[-1].n_iter_.max())
print(json.dumps({"accuracy": accuracy, "fitSeconds": fit_seconds, "iterations": n_iter, "sklearn": __import__("sklearn").__version__}))
