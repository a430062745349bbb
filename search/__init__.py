"""Co-design search: Optuna studies over model hyperparameters x hardware mapping.

    from search import SearchConfig, load_space, run_search
    outcome = run_search(SearchConfig(space=load_space("space.toml"), out_dir=Path("out"), n_trials=100))

`search.space` (the TOML space), `search.objectives` (objective and SLO registries),
`search.quality` (the quality proxy: Krajewski et al. 2024, fitted at expansion rate 64),
`search.study` (the
multi-fidelity study), `search.export` (Pareto CSV and design files), `search.verify` (the best
designs' kernels on the local torch device), `search.views` / `search.report` (the HTML report).
"""

from search.objectives import OBJECTIVES, Objective, SloConstraint, get_objective
from search.quality import QUALITY_LAWS, KrajewskiLaw, QualityLaw, QualityRegistry
from search.space import Candidate, SearchSpace, SpaceError, default_space, load_space, scale_model
from search.study import SearchConfig, SearchOutcome, TrialEvaluator, pareto_trials, run_search

__all__ = [
    "OBJECTIVES",
    "QUALITY_LAWS",
    "Candidate",
    "KrajewskiLaw",
    "Objective",
    "QualityLaw",
    "QualityRegistry",
    "SearchConfig",
    "SearchOutcome",
    "SearchSpace",
    "SloConstraint",
    "SpaceError",
    "TrialEvaluator",
    "default_space",
    "get_objective",
    "load_space",
    "pareto_trials",
    "run_search",
    "scale_model",
]
