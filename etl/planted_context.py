"""A context effect of known strength planted into synthetic feed logs: data with a known answer.

    python -m etl.synthetic feed --output DIR --mean-events 300 --planted-context 0.4 \
        [--planted-window 3] [--planted-lag 60 120] [--planted-rate 0.1]
    # the same command with --planted-context 0 writes the control

Why the feed format. Feed labels are clicks on impressions (protocol `feed_click`: every
impression is a request whose only candidate is the item itself), so the effect sets the click
probability of an impression directly and the label is exactly what the generator drew. In the
Taobao format the label of a candidate is "observed event vs. negative sampled by the ETL", so a
planted effect would have to change *which* items a user views, and what a model can gain from it
would depend on the ETL's negative sampler (its pool, popularity weights and the novelty of the
sampled items), which is being changed separately. The feed format keeps the known answer
independent of the sampler.

Generative process. First the ordinary feed log is generated (`etl.synthetic.write_feed`); each
user's impressions are ordered by time with distinct timestamps, positions 0..n-1, so the history
of the impression at position t is exactly positions 0..t-1 and "lag k" means position t - k.
Then, from an RNG stream of its own (the ordinary impressions are unchanged):

1. Design, shared by all users: `PAIRS` trigger pairs; pair p has a first trigger item A_p, a
   second trigger item B_p and a target item T_p: 3 * PAIRS new item ids after the catalog's,
   each with one author drawn from the catalog's author popularity.
2. Episodes: every position t >= lag_max starts an episode with probability `rate`: a
   pair p (uniform), A_p's lag a (uniform in [lag_min, lag_max]), and B_p's lag
   b = lag_min + (a - lag_min + offset) mod R with R = lag_max - lag_min + 1, where with
   probability 1/2 the offset is within the window (+-1..window: "together") and otherwise at
   cyclic distance > window (window+1..R-window-1: "apart"). The impressions at t, t - a and
   t - b are replaced by T_p, A_p and B_p (timestamps kept); an episode that would reuse a
   position already taken by another episode is skipped. Because the shift is cyclic, A_p's and
   B_p's lags are each uniform over [lag_min, lag_max] in both arrangements: the position of a
   single trigger says nothing about the arrangement, and both triggers are always present.
3. Labels, from the realised history (not from the drawn arrangement): the impression of T_p at t
   has the *pattern* when some A_p and some B_p sit at lags a, b in [lag_min, lag_max] with
   |a - b| <= window. It is clicked with probability

       base_click + strength * s_u * (+1/2 with the pattern, -1/2 without),

   base_click = 0.5, s_u the user's susceptibility: `ACTIVE_SUSCEPTIBILITY` (0.5) for active
   users (the 20 % with the most planned impressions: at or above the `ACTIVE_QUANTILE` 0.8 of
   users) and `CASUAL_SUSCEPTIBILITY` (1.5) for the others. This is the paper's §4.3 argument
   (active users are less swayed by context); activity reaches the models through the profile's
   event counts, which PEG reads. (Only users with more than lag_max impressions have targets at
   all, so a median split would leave the casual type almost none.) Trigger
   impressions are clicked with probability base_click. Watch time of a planted click is
   Gamma(2, 12) seconds, 0 without a click.

So, for target impressions: click rate with the pattern - without = strength * s_u (0.5 * strength
for active users, 1.5 * strength for casual ones); every single item of the window (A_p or B_p,
at any lag) is present in both arrangements with the same lag distribution, so no single item
carries the signal; only their co-occurrence within `window` positions, at least `lag_min` > 50
(the ETL's default short_len) impressions back, does. A short-term attention cannot see it, a
point-wise long-term attention sees both triggers either way, a TCN with context length >=
window can. Strength 0 is the control: the same draws in the same order (the RNG stream never
depends on the strength), so its log differs only in the targets' clicks and watch times.

The design is written to `DIR/planted.json` (pairs, parameters, active users) so that a check can
recompute every target's pattern from events.csv alone (tests/etl/test_planted_context.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PAIRS = 32
DEFAULT_RATE = 0.1  # episodes per eligible position: ~3 impressions in 10 after lag_max
BASE_CLICK = 0.5
ACTIVE_SUSCEPTIBILITY = 0.5
CASUAL_SUSCEPTIBILITY = 1.5
ACTIVE_QUANTILE = 0.8  # active users: planned impressions at or above this quantile over users
PLANTED_STREAM = 7_919  # second seed word of the planted RNG stream
DEFAULT_WINDOW = 3
DEFAULT_LAG = (60, 120)  # lag_min > short_len (50): out of the short-term window


@dataclass(frozen=True)
class PlantedDesign:
    """The planted effect's parameters and item ids.

    Args:
        strength: S, the click-rate gap between targets with and without the pattern (scaled by
            the user's susceptibility).
        window: largest distance (in impressions) between A_p and B_p that counts as the pattern.
        lag_min / lag_max: the far window, in impressions before the target.
        pairs: [P, 3] item ids (A_p, B_p, T_p).
        pair_authors: [P, 3] their author ids.
        rate: probability that a position at or after lag_max starts an episode.
    """

    strength: float
    window: int
    lag_min: int
    lag_max: int
    rate: float
    pairs: np.ndarray
    pair_authors: np.ndarray

    @property
    def span(self) -> int:
        return self.lag_max - self.lag_min + 1

    def to_json(self, active_users: list[int]) -> str:
        return json.dumps(
            {
                "strength": self.strength,
                "window": self.window,
                "lag_min": self.lag_min,
                "lag_max": self.lag_max,
                "rate": self.rate,
                "base_click": BASE_CLICK,
                "susceptibility": {
                    "active": ACTIVE_SUSCEPTIBILITY,
                    "casual": CASUAL_SUSCEPTIBILITY,
                },
                "pairs": [
                    {"first": int(a), "second": int(b), "target": int(t)} for a, b, t in self.pairs
                ],
                "active_users": active_users,
            },
            indent=1,
        )


def check_parameters(
    strength: float, window: int, lag_min: int, lag_max: int, rate: float
) -> str | None:
    """None when valid, else a message naming the bad parameter."""
    if not 0.0 <= strength * max(ACTIVE_SUSCEPTIBILITY, CASUAL_SUSCEPTIBILITY) / 2 <= BASE_CLICK:
        largest = 2 * BASE_CLICK / max(ACTIVE_SUSCEPTIBILITY, CASUAL_SUSCEPTIBILITY)
        return f"--planted-context must be in [0, {largest:.3f}] (click probabilities in [0, 1])"
    if window < 1:
        return "--planted-window must be >= 1"
    if lag_min < 1 or lag_max - lag_min + 1 < 2 * window + 2:
        return "--planted-lag MIN MAX needs MIN >= 1 and MAX - MIN + 1 >= 2 * window + 2"
    if not 0.0 < rate <= 0.3:
        return "--planted-rate must be in (0, 0.3]"
    return None


def make_design(
    strength: float,
    window: int,
    lag_min: int,
    lag_max: int,
    rate: float,
    first_item_id: int,
    author_weights: np.ndarray,
    seed: int,
) -> PlantedDesign:
    """PAIRS trigger pairs with new item ids from first_item_id on; authors by popularity."""
    rng = np.random.default_rng([seed, PLANTED_STREAM, 0])
    pairs = first_item_id + np.arange(3 * PAIRS).reshape(PAIRS, 3)
    authors = rng.choice(len(author_weights), size=(PAIRS, 3), p=author_weights) + 1
    return PlantedDesign(strength, window, lag_min, lag_max, rate, pairs, authors)


@dataclass(frozen=True)
class Episode:
    """Positions of one planted episode in a user's impressions."""

    pair: int
    target: int
    first: int
    second: int


def place_episodes(rng: np.random.Generator, design: PlantedDesign, length: int) -> list[Episode]:
    """Episodes for a user with `length` impressions (step 2 of the module docstring)."""
    episodes: list[Episode] = []
    taken: set[int] = set()
    span, window = design.span, design.window
    for target in range(design.lag_max, length):
        if rng.random() >= design.rate:
            continue
        pair = int(rng.integers(len(design.pairs)))
        first_lag = int(rng.integers(design.lag_min, design.lag_max + 1))
        if rng.random() < 0.5:  # together
            offset = int(rng.integers(1, window + 1)) * (1 if rng.random() < 0.5 else -1)
        else:  # apart: cyclic distance > window
            offset = int(rng.integers(window + 1, span - window))
        second_lag = design.lag_min + (first_lag - design.lag_min + offset) % span
        positions = (target, target - first_lag, target - second_lag)
        if taken.intersection(positions):
            continue
        taken.update(positions)
        episodes.append(Episode(pair, *positions))
    return episodes


def has_pattern(design: PlantedDesign, items: np.ndarray, pair: int, target: int) -> bool:
    """Whether A_pair and B_pair sit within `window` of each other at lags in the far window.

    items: [n] the user's item ids in time order; target: the target impression's position (the
    window is cut at the first impression when the target is closer to it than `lag_max`).
    """
    start, end = max(0, target - design.lag_max), max(0, target - design.lag_min + 1)
    window_items = items[start:end]  # lags lag_max..lag_min
    first = np.flatnonzero(window_items == design.pairs[pair, 0])
    second = np.flatnonzero(window_items == design.pairs[pair, 1])
    if not first.size or not second.size:
        return False
    return bool(np.abs(first[:, None] - second[None, :]).min() <= design.window)


@dataclass(frozen=True)
class PlantedCounts:
    targets: int = 0
    with_pattern: int = 0

    def __add__(self, other: PlantedCounts) -> PlantedCounts:
        return PlantedCounts(self.targets + other.targets, self.with_pattern + other.with_pattern)


def plant(
    rng: np.random.Generator, design: PlantedDesign, rows: list[list], susceptibility: float
) -> PlantedCounts:
    """Replace impressions of one user's rows in place (steps 2 and 3).

    rows: [n] mutable rows [user_id, item_id, author_id, click, timestamp, watch_time] in time
    order with distinct timestamps; susceptibility: s_u.
    """
    episodes = place_episodes(rng, design, len(rows))
    roles = {}  # position -> (pair, role): 0 = A_p, 1 = B_p, 2 = T_p
    for episode in episodes:
        roles[episode.first] = (episode.pair, 0)
        roles[episode.second] = (episode.pair, 1)
        roles[episode.target] = (episode.pair, 2)
    for position, (pair, role) in roles.items():
        rows[position][1] = int(design.pairs[pair, role])
        rows[position][2] = int(design.pair_authors[pair, role])
    items = np.array([row[1] for row in rows], dtype=np.int64)
    counts = PlantedCounts()
    for position in sorted(roles):  # the same draws whatever the strength
        pair, role = roles[position]
        draw, watch = rng.random(), rng.gamma(2.0, 12.0)
        probability = BASE_CLICK
        if role == 2:
            pattern = has_pattern(design, items, pair, position)
            sign = 0.5 if pattern else -0.5
            probability = BASE_CLICK + design.strength * susceptibility * sign
            counts = counts + PlantedCounts(1, int(pattern))
        click = int(draw < probability)
        rows[position][3] = click
        rows[position][5] = round(float(watch), 1) if click else 0.0
    return counts


def user_rng(seed: int, user_id: int) -> np.random.Generator:
    """The planted stream of one user: independent of the ordinary log's draws."""
    return np.random.default_rng([seed, PLANTED_STREAM, user_id])


def susceptibility(active: bool) -> float:
    return ACTIVE_SUSCEPTIBILITY if active else CASUAL_SUSCEPTIBILITY


def write_design(directory: Path, design: PlantedDesign, active_users: list[int]) -> Path:
    path = directory / "planted.json"
    path.write_text(design.to_json(active_users))
    return path
