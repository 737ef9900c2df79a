"""The clickstream event contract: one user action on a site or app."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ACTIONS", "Action", "ClickEvent"]

Action = Literal["view", "search", "login", "login_failed", "add_to_cart", "checkout",
                 "password_reset"]
ACTIONS: tuple[str, ...] = Action.__args__


class ClickEvent(BaseModel):
    """One user action; `ts_ms` is the event time in epoch milliseconds.

    `dwell_ms` is how long the user stayed on the previous page before this action (ms, as the
    client measured it; 0 for the first action of a session). `value` is the basket value of an
    ``add_to_cart`` or ``checkout`` (0 for every other action).
    """

    # strict: a number must be a JSON number ("12.5" is refused), an integer a JSON integer.
    model_config = ConfigDict(allow_inf_nan=False, frozen=True, extra="ignore", strict=True)

    event_id: str = Field(min_length=1, max_length=128)
    user_id: str = Field(min_length=1, max_length=128)
    session_id: str = Field(min_length=1, max_length=128)
    action: Action
    ip_country: str = Field(min_length=2, max_length=2)
    device_id: str = Field(min_length=1, max_length=128)
    dwell_ms: int = Field(ge=0, lt=86_400_000)
    value: float = Field(ge=0, lt=1e7)
    ts_ms: int = Field(ge=0, lt=1 << 53)
