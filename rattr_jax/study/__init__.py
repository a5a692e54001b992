"""`rattr study`: which training makes explanations robust and faithful.

A study trains each method on each seed, explains the same evaluation images
with every explainer, attacks the explanations at every radius, scores every
metric and model diagnostic, and writes ``scores.csv`` (every value, one row
per example), ``summary.csv``/``summary.json`` (bootstrap CIs, paired tests,
ranks, claims), figures and ``REPORT.md``. See the README section "The study".
"""

from rattr_jax.study._aggregate import read_scores
from rattr_jax.study._aggregate import summarize
from rattr_jax.study._aggregate import summarize_file
from rattr_jax.study._config import ATTACKS
from rattr_jax.study._config import EXPLAINERS
from rattr_jax.study._config import load_config
from rattr_jax.study._config import OBJECTIVES
from rattr_jax.study._config import parse_config
from rattr_jax.study._config import preset_names
from rattr_jax.study._config import preset_text
from rattr_jax.study._config import STAGES
from rattr_jax.study._config import StudyConfig
from rattr_jax.study._pipeline import ModelRun
from rattr_jax.study._pipeline import run_study
from rattr_jax.study._pipeline import StudyResult
from rattr_jax.study._pipeline import uses_onednn
from rattr_jax.study._report import claims_table
from rattr_jax.study._report import headline as headline_table
from rattr_jax.study._run import check_out_dir
from rattr_jax.study._run import enable_compilation_cache
from rattr_jax.study._stats import bootstrap_ci
from rattr_jax.study._stats import holm
from rattr_jax.study._stats import paired_wilcoxon
from rattr_jax.study._stats import rank_table

__all__ = ["read_scores", "summarize", "summarize_file", "ATTACKS", "EXPLAINERS", "load_config",
           "OBJECTIVES", "parse_config", "preset_names", "preset_text", "claims_table",
           "headline_table", "check_out_dir", "enable_compilation_cache", "STAGES", "StudyConfig", "ModelRun",
           "run_study", "StudyResult", "uses_onednn", "bootstrap_ci", "holm", "paired_wilcoxon", "rank_table"]
