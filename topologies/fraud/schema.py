"""The card payment event contract."""

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["CardPayment"]


class CardPayment(BaseModel):
    """One card payment; `ts_ms` is the event time in epoch milliseconds."""

    # strict: a number must be a JSON number ("12.5" is refused), an integer a JSON integer.
    model_config = ConfigDict(allow_inf_nan=False, frozen=True, extra="ignore", strict=True)

    event_id: str = Field(min_length=1, max_length=128)
    card_id: str = Field(min_length=1, max_length=128)
    merchant_id: str = Field(min_length=1, max_length=128)
    amount: float = Field(gt=0, lt=1e9)
    currency: str = Field(min_length=3, max_length=3)
    country: str = Field(min_length=2, max_length=2)
    ts_ms: int = Field(ge=0, lt=1 << 53)
