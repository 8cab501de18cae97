"""The classical factorisations of a layer's spatial feature vectors, shared by
:func:`~workbench.analysis.dictionary.fit_dictionary` (as dictionaries) and
:func:`~workbench.analysis.concepts.discover_concepts` (as concepts), so that both fit the same way.

Each ``fit_*(x, n, seed)`` takes vectors ``x`` ``[P, C]`` (one per position of each map) and returns
``(atoms [n, C], mean [C], encode, model)``: ``encode(v [P', C]) -> codes [P', n]`` with ``v ~ codes @ atoms + mean``,
and the fitted scikit-learn object (None for ``channels``). (:func:`fit_pca_atoms` is not
:func:`workbench.analysis.pca.fit_pca`, the public PCA of whole layers with its own result type.)
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import Tensor

from ..globalstate import import_keeping_environ


def fit_pca_atoms(x: Tensor, n_atoms: int, seed: int):
    """scikit-learn's PCA: the atoms are the principal directions, the codes the centred projections."""
    import_keeping_environ("sklearn")  # its first import would set KMP_DUPLICATE_LIB_OK
    from sklearn.decomposition import PCA

    pca = PCA(n_components=n_atoms, random_state=seed).fit(x.numpy())
    atoms, mean = torch.as_tensor(pca.components_).float(), torch.as_tensor(pca.mean_).float()
    return atoms, mean, lambda v: (v - mean) @ atoms.T, pca


@contextmanager
def _quiet_convergence():
    """scikit-learn's ConvergenceWarning silenced within the block (the caller measures the fit instead)."""
    import warnings

    import_keeping_environ("sklearn")  # its first import would set KMP_DUPLICATE_LIB_OK
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


def fit_nmf(x: Tensor, n_atoms: int, seed: int):
    """scikit-learn's NMF at a fixed iteration budget. It often stops before its tolerance on these maps; its
    ConvergenceWarning is not shown, because what matters is measured and reported: the dictionary's R²."""
    import_keeping_environ("sklearn")  # its first import would set KMP_DUPLICATE_LIB_OK
    from sklearn.decomposition import NMF

    nmf = NMF(n_components=n_atoms, init="nndsvda", max_iter=400, random_state=seed)
    with _quiet_convergence():
        nmf.fit(x.clamp_min(0).numpy())
    atoms = torch.as_tensor(nmf.components_).float()

    def encode(v: Tensor) -> Tensor:
        with _quiet_convergence():
            return torch.as_tensor(nmf.transform(v.clamp_min(0).numpy())).float()

    return atoms, torch.zeros(x.shape[1]), encode, nmf


def fit_kmeans(x: Tensor, n_atoms: int, seed: int):
    """Spherical k-means; atom = the members' mean vector, code = the projection on the nearest atom alone."""
    import_keeping_environ("sklearn")  # its first import would set KMP_DUPLICATE_LIB_OK
    from sklearn.cluster import KMeans

    unit = x / x.norm(dim=1, keepdim=True).clamp_min(1e-8)
    km = KMeans(n_clusters=n_atoms, n_init=4, random_state=seed).fit(unit.numpy())
    labels = torch.as_tensor(km.labels_).long()
    atoms = torch.zeros(n_atoms, x.shape[1]).index_add_(0, labels, x)
    atoms /= torch.bincount(labels, minlength=n_atoms).clamp_min(1)[:, None].float()
    directions = atoms / atoms.norm(dim=1, keepdim=True).clamp_min(1e-8)

    def encode(v: Tensor) -> Tensor:
        sim = v @ directions.T
        nearest = sim.argmax(1, keepdim=True)
        proj = (sim.gather(1, nearest) / atoms.norm(dim=1).clamp_min(1e-8)[nearest]).clamp_min(0)
        return torch.zeros(len(v), n_atoms).scatter_(1, nearest, proj)

    return atoms, torch.zeros(x.shape[1]), encode, km


def fit_channels(x: Tensor, n_atoms: int, seed: int):
    """The channels themselves, the baseline: identity atoms, the vectors as codes."""
    return torch.eye(n_atoms), torch.zeros(n_atoms), lambda v: v.clone(), None


#: The scikit-learn decompositions, shared by concept discovery and dictionary fitting.
DECOMPOSITIONS = ("pca", "nmf", "kmeans")
#: The factorisation of each method name.
FITTERS = {"pca": fit_pca_atoms, "nmf": fit_nmf, "kmeans": fit_kmeans, "channels": fit_channels}
