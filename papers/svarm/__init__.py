"""SVARM and Stratified SVARM (Kolpaczki, Bengs, Muschalik, Hüllermeier, AAAI 2024) with the paper's baselines."""

from .approximators import (
    ESTIMATORS,
    LABELS,
    VARIANTS,
    BudgetExceeded,
    BudgetMeter,
    approshapley,
    kernelshap,
    owen_sampling,
    paper_size_distribution,
    stratified_sampling,
    stratified_svarm,
    stratified_svarm_minimum_budget,
    stratified_svarm_plus,
    stratified_svarm_scheme,
    stratified_svarm_shapiq_scheme,
    structured_sampling,
    svarm,
    unbiased_kernelshap,
)
from .benchmark import (
    additive_r2,
    bias_check,
    mse_table,
    per_game_mse,
    rank_among,
    run_estimator,
    shapiq_available,
    shapiq_estimate,
    stratum_variance_ratio,
)
from .cooperative_games import SOUG, AirportGame, Game, ModelGame, ShoeGame, exact_shapley_by_enumeration

__all__ = [
    "ESTIMATORS", "LABELS", "VARIANTS", "stratified_svarm_scheme", "stratified_svarm_shapiq_scheme", "BudgetExceeded", "BudgetMeter", "approshapley", "kernelshap", "paper_size_distribution",
    "stratified_sampling", "stratified_svarm", "stratified_svarm_plus", "structured_sampling", "owen_sampling", "stratified_svarm_minimum_budget", "svarm", "unbiased_kernelshap",
    "additive_r2", "bias_check", "mse_table", "per_game_mse", "rank_among", "stratum_variance_ratio", "run_estimator", "shapiq_available", "shapiq_estimate",
    "SOUG", "AirportGame", "Game", "ModelGame", "ShoeGame", "exact_shapley_by_enumeration",
]
