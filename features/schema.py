"""The data contract of a CRM base: one place, read by validation, I/O and the generators.

A *base* is a folder holding one file per table, Parquet (``customers.parquet``) or CSV
(``customers.csv``). Two tables are required, two are optional:

========================  ========  =======================================================
table                     required  one row per
========================  ========  =======================================================
``customers``             yes       customer (``customer_id`` unique)
``transactions``          yes       order line (``order_id`` + ``product_category`` unique)
``invoices``              no        invoice (``invoice_id`` unique)
``interactions``          no        service or marketing contact
========================  ========  =======================================================

Time conventions, used by every feature and label:

* timestamps (``ts``) are naive, in the company's local time; dates are calendar days;
* an *as-of date* T is the start of day T: an event belongs to the past when ``ts < T``;
* a *horizon* of H days is the window ``T <= ts < T + H`` (the architecture's (T, T+H]).

Money columns are in the company's currency and finite. They are non-negative except a
transaction's ``revenue`` and ``cost`` and an invoice's ``amount``:

* a transaction line with a negative revenue or cost is a *return* (goods sent back, a credit
  note), whose revenue and cost are both zero or below. A return nets against revenue and
  margin but is not a purchase: it places no order, moves no recency and makes no purchase
  label. The margin of a line is ``revenue - cost`` and may be negative;
* an invoice with a negative amount is a *credit note*: while it is open (not yet applied:
  ``paid_date`` empty or not before T) it lowers the outstanding balance; it is no invoice to
  count, to be late with or to default on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Kind(StrEnum):
    """Logical column types of the contract (independent of the file format)."""

    ID = "id"  # string key; integers are accepted and read as their decimal text
    STRING = "string"  # categorical label
    DATE = "date"  # calendar day
    TIMESTAMP = "timestamp"  # day and time of day
    MONEY = "money"  # non-negative, finite amount of currency
    SIGNED_MONEY = "signed money"  # finite amount of currency, negative for a return


@dataclass(frozen=True)
class Column:
    """One column of a table of the contract."""

    name: str
    kind: Kind
    description: str
    nullable: bool = False
    allowed: tuple[str, ...] | None = None  # closed vocabulary, when there is one


@dataclass(frozen=True)
class Table:
    """One table of the contract: its columns, key and whether a base must have it."""

    name: str
    description: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]
    required: bool = True
    #: the column holding the event time, checked against the as-of date
    time_column: str | None = None
    #: extra columns are allowed (customer attributes) and carried along untouched
    allows_extra: bool = False
    references_customers: bool = True
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"table {self.name!r} has no column {name!r}")


INTERACTION_KINDS: tuple[str, ...] = ("complaint", "support", "visit", "campaign")

CUSTOMERS = Table(
    name="customers",
    description="One row per customer, with the attributes known at sign-up.",
    columns=(
        Column("customer_id", Kind.ID, "Customer key, unique."),
        Column("signup_date", Kind.DATE, "Day the customer relationship started."),
        Column("segment", Kind.STRING, "Customer segment, e.g. B2B or B2C."),
        Column("region", Kind.STRING, "Sales region."),
        Column("acquisition_channel", Kind.STRING, "Channel the customer was acquired through."),
    ),
    key=("customer_id",),
    time_column="signup_date",
    allows_extra=True,
    references_customers=False,
    notes=("Any further column is an optional customer attribute, a feature: text (a category), a number, "
           "true/false or a date. Text whose every value is a number, true/false or an ISO date is read "
           "as one, as every column of a CSV is text.",),
)

TRANSACTIONS = Table(
    name="transactions",
    description="Order lines: what each customer bought, when, for how much.",
    columns=(
        Column("customer_id", Kind.ID, "Customer who placed the order."),
        Column("ts", Kind.TIMESTAMP, "Time of the order."),
        Column("order_id", Kind.ID, "Order key; one line per product category of an order."),
        Column("product_category", Kind.STRING, "Product category of the line."),
        Column("revenue", Kind.SIGNED_MONEY, "Revenue of the line, currency; negative for a return."),
        Column("cost", Kind.SIGNED_MONEY, "Cost of goods of the line, currency, of the same sign as the "
               "revenue (zero or below for a return); margin = revenue - cost."),
    ),
    key=("order_id", "product_category"),
    time_column="ts",
    notes=("A line whose revenue or cost is negative is a return or a credit note: it carries its own "
           "order_id (the credit note's number, as the key asks) and both its amounts are zero or below. "
           "Returns net against revenue and margin; they are not purchases: no order, no recency, no "
           "purchase label.",),
)

INVOICES = Table(
    name="invoices",
    description="Invoices and their payment; drives payment behaviour and credit risk.",
    columns=(
        Column("customer_id", Kind.ID, "Customer invoiced."),
        Column("invoice_id", Kind.ID, "Invoice key, unique."),
        Column("issue_date", Kind.DATE, "Day the invoice was issued."),
        Column("due_date", Kind.DATE, "Day payment is due; not before issue_date."),
        Column("amount", Kind.SIGNED_MONEY, "Invoiced amount, currency; negative for a credit note."),
        Column("paid_date", Kind.DATE, "Day it was paid in full (a credit note: applied); empty while unpaid.",
               nullable=True),
    ),
    key=("invoice_id",),
    required=False,
    time_column="issue_date",
    notes=("An invoice with a negative amount is a credit note: while open (not yet applied) it lowers the "
           "outstanding balance; it is not counted among invoices, arrears, lateness or defaults.",),
)

INTERACTIONS = Table(
    name="interactions",
    description="Service and marketing contacts and their activity-based cost to serve.",
    columns=(
        Column("customer_id", Kind.ID, "Customer contacted or contacting."),
        Column("ts", Kind.TIMESTAMP, "Time of the contact."),
        Column("kind", Kind.STRING, "What the contact was.", allowed=INTERACTION_KINDS),
        Column("cost_to_serve", Kind.MONEY, "Activity-based cost of the contact, currency."),
    ),
    key=(),
    required=False,
    time_column="ts",
)

TABLES: dict[str, Table] = {t.name: t for t in (CUSTOMERS, TRANSACTIONS, INVOICES, INTERACTIONS)}

#: file suffixes a base may use, in order of preference when both exist
FILE_SUFFIXES: tuple[str, ...] = (".parquet", ".csv")


def describe_contract() -> str:
    """Render the contract as Markdown (used by ``crmscore validate --contract`` and the docs)."""
    lines = ["# The CRM base data contract", ""]
    for table in TABLES.values():
        need = "required" if table.required else "optional"
        key = ", ".join(table.key) if table.key else "none"
        lines += [f"## `{table.name}` ({need})", "", table.description, "", f"Key: {key}.", ""]
        lines += ["| column | type | nullable | meaning |", "|---|---|---|---|"]
        for c in table.columns:
            meaning = c.description
            if c.allowed:
                meaning += " One of: " + ", ".join(c.allowed) + "."
            lines.append(f"| `{c.name}` | {c.kind.value} | {'yes' if c.nullable else 'no'} | {meaning} |")
        lines += [*(f"\n{n}" for n in table.notes), ""]
    return "\n".join(lines)
