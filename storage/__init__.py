"""WHERE results live: storage URL -> Optuna storage, and study create/load. Optuna's own schema."""

from cifar_hpo.storage.masking import mask_url
from cifar_hpo.storage.studies import open_study, study_exists
from cifar_hpo.storage.urls import make_storage

__all__ = ["make_storage", "mask_url", "open_study", "study_exists"]
