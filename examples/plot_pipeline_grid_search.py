"""
Tune the number of clusters with GridSearchCV
=============================================

The two stages of :class:`~skdeepclust.PretrainedFeatureClusterer` are ordinary
scikit-learn estimators: :class:`~skdeepclust.ImageEmbedder` turns images into
features and :class:`~skdeepclust.FeatureClusterer` clusters them, so they fit in
a :class:`~sklearn.pipeline.Pipeline` and their settings can be searched with
:class:`~sklearn.model_selection.GridSearchCV`.

The backbone is the slow part and does not depend on ``n_clusters``, so the photos
are embedded once and the search runs on the features. The fitted embedder and the
best clusterer are then put back together into one pipeline that clusters new
photos. (To search backbone settings too, search the pipeline itself and give it
``memory=`` so that each embedding is computed once per fold.)

``FeatureClusterer.score`` makes the search work with labels (clustering accuracy
on the held-out fold) and without them (cosine silhouette of the held-out fold).
"""

import time

import matplotlib.pyplot as plt
from _example_data import backbone_settings, cifar10_test_photos
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.pipeline import Pipeline

from skdeepclust import FeatureClusterer, ImageEmbedder
from skdeepclust.metrics import CLUSTERING_SCORERS

files, y, class_names = cifar10_test_photos(n_per_class=100)

# %%
# Embed once.
start = time.perf_counter()
embedder = ImageEmbedder(**backbone_settings())
features = embedder.fit_transform(files)
print(f"embedded {len(files)} photos into {features.shape[1]} features "
      f"in {time.perf_counter() - start:.1f} s")

# %%
# The folds must be shuffled: the photos are sorted by class, so unshuffled folds
# would each hold out whole classes, and the held-out clusters would be scored on
# classes the clusterer never saw.
folds = KFold(3, shuffle=True, random_state=0)
grid = {"n_clusters": [6, 8, 10, 12, 14]}

# %%
# With labels: the held-out accuracy (Hungarian-matched), NMI and ARI, refitting
# the most accurate setting.
with_labels = GridSearchCV(
    FeatureClusterer(random_state=0), grid, cv=folds,
    scoring=CLUSTERING_SCORERS, refit="accuracy",
).fit(features, y)
print("with labels:    best", with_labels.best_params_,
      f"accuracy {with_labels.best_score_:.3f}")

# %%
# Without labels: ``score`` is the cosine silhouette of the held-out fold's
# predicted clusters. It does not grow with the number of clusters by itself, so
# its maximum is a usable choice when no labels exist.
without_labels = GridSearchCV(FeatureClusterer(random_state=0), grid, cv=folds).fit(features)
print("without labels: best", without_labels.best_params_,
      f"silhouette {without_labels.best_score_:.3f}")

# %%
# Both criteria along the grid.
ks = grid["n_clusters"]
fig, accuracy_axis = plt.subplots(figsize=(6, 3.5))
accuracy_axis.plot(ks, with_labels.cv_results_["mean_test_accuracy"], "o-", label="accuracy")
accuracy_axis.plot(ks, with_labels.cv_results_["mean_test_nmi"], "s-", label="NMI")
accuracy_axis.set_xlabel("n_clusters")
accuracy_axis.set_ylabel("with labels (held-out)")
silhouette_axis = accuracy_axis.twinx()
silhouette_axis.plot(ks, without_labels.cv_results_["mean_test_score"], "^--", color="C3",
                     label="silhouette (no labels)")
silhouette_axis.set_ylabel("silhouette (held-out)")
fig.legend(loc="lower right", fontsize="small")
fig.tight_layout()

# %%
# The fitted embedder and the chosen clusterer form one pipeline for new photos,
# without embedding the training photos again.
model = Pipeline([("embed", embedder), ("cluster", without_labels.best_estimator_)])
new_files, _, _ = cifar10_test_photos(n_per_class=2, random_state=1)
print("clusters of 20 other photos:", model.predict(new_files).tolist())
