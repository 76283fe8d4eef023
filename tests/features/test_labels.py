"""Labels: the architecture's definitions on tiny arrays, edges of the horizon included."""

from __future__ import annotations

from datetime import date

import numpy as np
import pytest

from crmscore.features.labels import (
    NAT_NS,
    NS_PER_DAY,
    check_labels_observable,
    churn_label,
    default_label,
    label_specs,
    margin_label,
    purchase_labels,
)

T = int(np.datetime64("2024-07-01", "ns").view(np.int64))


def day(text: str) -> int:
    return int(np.datetime64(text, "ns").view(np.int64))


def test_churn_needs_a_purchase_before_t() -> None:
    past = np.array([0, 0, 1])  # customers 0 and 1 bought before T, 2 never did
    horizon = np.array([1, 2])
    out = churn_label(past, horizon, 4)
    np.testing.assert_array_equal(out, [1.0, 0.0, np.nan, np.nan])


def test_purchase_labels_per_category() -> None:
    out = purchase_labels(np.array([0, 0, 2, 1]), np.array([1, 1, 0, -1]), 3, 2)
    np.testing.assert_array_equal(out, [[0, 1], [0, 0], [1, 0]])
    assert out.dtype == np.int64


def test_margin_label_sums_and_zero() -> None:
    np.testing.assert_array_equal(margin_label(np.array([0, 0]), np.array([2.5, -1.0]), 2), [1.5, 0.0])


def test_default_window_edges_and_payment_day() -> None:
    h = 90
    due_first = day("2024-07-01") - 90 * NS_PER_DAY  # reaches 90 days past due on T: in
    due_last = day("2024-09-29") - 90 * NS_PER_DAY  # on T + H: out
    due_before = due_first - NS_PER_DAY  # the day before T: out
    pos = np.array([0, 1, 2, 3, 3, 4])
    issue = np.array([day("2024-01-01")] * 5 + [day("2024-08-01")])
    due = np.array([due_first, due_last, due_before, due_first + NS_PER_DAY, due_first, day("2024-08-02")])
    default_day = due + 90 * NS_PER_DAY
    paid = np.array([
        NAT_NS,  # never paid: default
        NAT_NS,
        NAT_NS,
        default_day[3],  # paid on the 90th day past due: still a default
        default_day[4] - NS_PER_DAY,  # paid the day before: not a default
        NAT_NS,  # customer 4 had no invoice before T (this one is issued after)
    ])
    out = default_label(pos, issue, due, paid, 6, T, h)
    np.testing.assert_array_equal(out, [1.0, 0.0, 0.0, 1.0, np.nan, np.nan])


def test_default_counts_invoices_issued_inside_the_horizon() -> None:
    # Customer 0 was invoiced before T; a later invoice issued at T is due at once and unpaid:
    # it reaches 90 days past due inside a 120-day horizon.
    pos = np.array([0, 0])
    issue = np.array([day("2024-01-01"), day("2024-07-01")])
    due = np.array([day("2024-01-31"), day("2024-07-01")])
    paid = np.array([day("2024-02-01"), NAT_NS])
    assert default_label(pos, issue, due, paid, 1, T, 120).tolist() == [1.0]
    assert default_label(pos, issue, due, paid, 1, T, 90).tolist() == [0.0]


def test_unobserved_horizon_message() -> None:
    with pytest.raises(ValueError) as err:
        check_labels_observable(date(2024, 12, 1), 90, date(2025, 1, 1))
    assert str(err.value) == (
        "labels need the whole horizon observed: as_of 2024-12-01 + horizon_days 90 ends on "
        "2025-03-01, after the end of the data 2025-01-01; use an as_of on or before 2024-10-03 "
        "or with_labels=False"
    )
    check_labels_observable(date(2024, 10, 3), 90, date(2025, 1, 1))  # exactly observed


def test_label_specs() -> None:
    names = [s.name for s in label_specs(["Books", "home"], has_invoices=False)]
    assert names == ["label_churn", "label_purchase_books", "label_purchase_home", "label_margin"]
    names = [s.name for s in label_specs([], has_invoices=True)]
    assert names == ["label_churn", "label_default", "label_margin"]
