"""Each model-side trick's function takes exactly the trick's parameters as keywords (init, norm, dropout, pruning)."""

import inspect
from collections.abc import Callable

import pytest

from autotrick.params import Trick
from autotrick.tricks.dropout import DROPOUT, set_dropout
from autotrick.tricks.init import INIT, initialize
from autotrick.tricks.norm import NORM, swap_norms
from autotrick.tricks.pruning import PRUNE, prune_weights


@pytest.mark.parametrize(("trick", "apply", "not_model_side"), [
    (INIT, initialize, set()), (NORM, swap_norms, set()), (DROPOUT, set_dropout, set()),
    # the epochs and the schedule belong to the training loop; structured is another function
    (PRUNE, prune_weights, {"finetune_epochs", "structured", "schedule", "gradual_start", "gradual_end"}),
])
def test_keywords_are_the_trick_params(trick: Trick, apply: Callable[..., object],
                                       not_model_side: set[str]) -> None:
    keywords = {name for name, p in inspect.signature(apply).parameters.items() if p.kind is p.KEYWORD_ONLY}
    assert keywords == {p.name for p in trick.params} - not_model_side
