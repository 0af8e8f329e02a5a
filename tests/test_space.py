"""Search spaces: every shipped space loads; every bad space fails with one line naming the
file, the key and the rule; sampling is define-by-run (a conditional parameter only under its parent)."""

import re
from pathlib import Path

import optuna
import pytest

from autotrick.errors import ConfigError
from autotrick.params import Choice, Fixed, Range
from autotrick.space import builtin_spaces, load_space, resolve_values
from autotrick.tricks import TRICKS, all_params, defaults

BAD_SPACES = {
    "yaml syntax": ("tricks: {norm: [keep\n", "is not valid YAML"),
    "unknown trick": ("tricks: {warp_drive: search}\n", "tricks.warp_drive: unknown key; allowed: norm"),
    "unknown param": ("tricks: {norm: {flavour: [a]}}\n", "tricks.norm.flavour: unknown key; allowed: type, groups"),
    "low > high": ("tricks: {optim: {lr: {low: 0.5, high: 0.1}}}\n", "tricks.optim.lr: low (0.5) > high (0.1)"),
    "log low <= 0": ("tricks: {optim: {weight_decay: {low: 0, high: 0.1, log: true}}}\n",
                     "tricks.optim.weight_decay: a log range needs low > 0"),
    "empty choices": ("tricks: {norm: {type: []}}\n", "tricks.norm.type: empty choice list"),
    "bad choice": ("tricks: {norm: {type: [keep, batchy]}}\n", "'batchy' is not allowed; expected one of keep"),
    "wrong type": ("tricks: {smoothing: {eps: abc}}\n",
                   "tricks.smoothing.eps: 'abc' is not allowed; expected a number"),
    "out of bounds": ("tricks: {smoothing: {eps: {low: 0, high: 1.5}}}\n", "1.5 is not allowed"),
    "range on a choice": ("tricks: {norm: {type: {low: 1, high: 2}}}\n", "a range needs a numeric parameter"),
    "bad budget": ("budget: {trials: 0}\n", "budget.trials: 0 must be a positive integer"),
    "bad metric": ("budget: {metric: f1}\n", "budget.metric: 'f1' is not allowed; expected one of val_accuracy"),
    "grace > max": ("budget: {max_epochs: 2, grace_epochs: 3}\n", "budget.grace_epochs: 3 must be <= max_epochs"),
    "unknown top key": ("trickz: {}\n", "trickz: unknown key"),
    "not a mapping": ("- a\n- b\n", "top level: must be a mapping"),
}


@pytest.mark.parametrize("case", BAD_SPACES, ids=list(BAD_SPACES))
def test_bad_space_names_the_file_key_and_rule(tmp_path: Path, case: str) -> None:
    text, expected = BAD_SPACES[case]
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_space(str(path))
    message = str(error.value)
    assert str(path) in message and expected in message
    assert "\n" not in message


def test_unknown_space_name_lists_the_builtins() -> None:
    with pytest.raises(ConfigError, match=r"unknown search space 'nope'; expected one of .*quick"):
        load_space("nope")


@pytest.mark.parametrize("name", ["quick", "default", "cifar_resnet"])
def test_shipped_spaces_load(name: str) -> None:
    space = load_space(name)
    assert space.domains and space.budget.trials > 0


def test_default_space_covers_every_documented_trick() -> None:
    searched = {key.split(".")[0] for key, domain in load_space("default").domains.items()
                if not isinstance(domain, Fixed)}
    assert {"init", "norm", "smoothing", "schedule", "augment", "dropout", "prune", "optim", "mix"} <= searched
    domains = load_space("default").domains
    for key in ("schedule.warmup_epochs", "schedule.t_max", "optim.lr", "optim.weight_decay", "prune.ratio"):
        assert isinstance(domains[key], Range), key


def test_builtin_spaces_are_listed() -> None:
    assert {"quick", "default", "cifar_resnet"} <= set(builtin_spaces())


def test_conditional_parameters_are_drawn_only_under_their_parent() -> None:
    space = load_space("default")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen_group = seen_other = False
    for _ in range(60):
        trial = study.ask()
        values = space.suggest(trial)
        assert ("norm.groups" in values) == (values["norm.type"] == "group")
        assert ("optim.momentum" in values) == (values["optim.name"] in ("sgd", "lars"))
        assert ("optim.trust_coef" in values) == (values["optim.name"] == "lars")
        assert ("augment.magnitude" in values) == (values["augment.policy"] == "randaugment")
        assert ("prune.finetune_epochs" in values) == (values["prune.ratio"] > 0)
        # a chain: the schedule under structured, itself under the ratio
        assert ("prune.schedule" in values) == (values["prune.ratio"] > 0 and not values["prune.structured"])
        assert ("prune.gradual_end" in values) == (values.get("prune.schedule") == "gradual")
        assert ("loss.gamma" in values) == (values["loss.name"] == "focal")
        assert set(trial.params) <= set(values)  # Optuna saw exactly what was drawn
        seen_group |= values["norm.type"] == "group"
        seen_other |= values["norm.type"] != "group"
        study.tell(trial, 0.5)
    assert seen_group and seen_other


def test_fixed_trial_replays_sampled_values_through_the_same_walk() -> None:
    space = load_space("default")
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3)).ask()
    values = space.suggest(trial)
    assert resolve_values(values, "recipe") == values


def test_the_searchs_first_trial_is_the_one_baseline_every_trick_at_its_default() -> None:
    from autotrick.study import BASELINE_KEY, DefineByRun

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    define = DefineByRun(load_space("default"))
    study.enqueue_trial(define.baseline_params(), user_attrs={BASELINE_KEY: True})
    drawn = define(study.ask())
    assert drawn[BASELINE_KEY] is True
    for key, value in drawn.items():
        if key in defaults():
            assert defaults()[key] == value, key
    assert "norm.groups" not in drawn  # its parent (norm.type=keep) is not group


def test_resolve_values_rejects_unknown_and_out_of_range() -> None:
    unknown = r"unknown trick parameter 'norm\.flavour'; expected norm\.type, norm\.groups"
    with pytest.raises(ConfigError, match=unknown):
        resolve_values({"norm.flavour": 1}, "--set")
    with pytest.raises(ConfigError, match=r"smoothing.eps: 2 is not allowed; expected a number in \[0, 0.99\]"):
        resolve_values({"smoothing.eps": 2}, "--set")


def test_every_param_validates_its_own_default_and_its_search_domain_lies_inside_what_it_allows() -> None:
    for key, param in all_params().items():
        assert param.check(param.default, key) == param.default
        search = param.search
        if isinstance(search, Fixed):  # free text is never searched: its search domain is its default
            assert param.kind == "str" and search.value == param.default, key
            continue
        inside = (search.low, search.high) if isinstance(search, Range) else search.options
        assert all(param.allowed.contains(value) for value in inside), key
    assert len(TRICKS) >= 16


@pytest.mark.parametrize(("make", "message"), [
    (lambda: Range(2.0, 1.0), "low (2) > high (1)"),
    (lambda: Range(0.0, 1.0, log=True), "a log range needs low > 0"),
    (lambda: Range(0.0, 1.0, step=-1), "step -1 must be a positive number"),
    (lambda: Range(1.0, 2.0, step=0.5, log=True), "both a step and log"),
    (lambda: Range(1, 10, integer=True, step=0.5), "takes whole numbers (got low 1, high 10, step 0.5)"),
    (lambda: Range(1.5, 10, integer=True), "an integer parameter takes whole numbers (got low 1.5, high 10)"),
    (lambda: Choice(()), "empty choice list"),
])
def test_domains_check_themselves_when_made(make: object, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        make()  # type: ignore[operator]


def test_domains_answer_whether_they_contain_a_value() -> None:
    assert Range(0, 3, integer=True).contains(2) and not Range(0, 3, integer=True).contains(2.5)
    assert not Range(0, 1).contains(True) and not Range(0, 1).contains(float("nan"))
    assert Choice((1, 2)).contains(1) and not Choice((1, 2)).contains(True)  # YAML's true is not 1
    assert Choice((False, True)).contains(False) and not Choice((False, True)).contains(0)
    assert Fixed("group").contains("group") and not Fixed("group").contains("batch")
