"""The demos ``make demo`` runs: every sampler on the exact score of a Gaussian mixture
(:mod:`.exact`), then real training of the embedded defaults (:mod:`.train`). Entry points
(L4): imported by nothing but tests."""
