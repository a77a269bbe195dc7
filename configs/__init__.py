"""gradtrain's Hydra configs, shipped inside the package so `compose` works from any folder."""
