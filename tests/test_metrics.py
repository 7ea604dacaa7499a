"""The logged-metric helpers (rabo.metrics): the headline shown and the per-round mean."""

from rabo.metrics import headline, mean


def test_headline_keeps_the_logged_headline_metrics_in_order():
    logged = {"accuracy": 0.5, "round": 3, "outer_loss": None, "inner_loss": 1.25,
              "hypergrad_norm": 0.0}
    assert list(headline(logged).items()) == [("inner_loss", 1.25), ("accuracy", 0.5),
                                              ("hypergrad_norm", 0.0)]


def test_mean_sums_left_to_right_and_is_none_without_values():
    assert mean([0.1, 0.2, 0.3]) == (0.1 + 0.2 + 0.3) / 3
    assert mean([1.0, 2.0, 6.0]) == 3.0
    assert mean([]) is None
