"""Synthetic exposure logs from a hidden preference model that a two-tower model can learn quickly.

The hidden model (pure NumPy, seeded, so one seed gives byte-identical records):

* ``LATENT_DIM`` latent dimensions. A user's vector is the sum of embeddings of their age bucket,
  gender and occupation, plus noise; an item's is the mean of its 1-3 genres' embeddings (of 12),
  plus noise. Item popularity is Zipf-like (weight ``1 / rank``).
* Context: the device and the part of the day each shift preferences toward some genres.
* A user's requests come in sessions (a minute or so apart; sessions hours to days apart), each on
  one device. A request shows ``exposures_per_request`` distinct items, drawn from a mixture of
  popularity, uniform and a noisy guess of the user's taste (the logging recommender); exactly one
  is clicked, drawn by softmax(affinity + context + popularity).
* Item titles are 2-4 words from their genres' word lists, so the title text carries the genre.

Split: each user's last request is the test event (its click only); train keeps the clicks
(``label=1``, ``rating=1.0``) and the shown-but-unclicked items (``label=0``, ``rating=0.0``) of all
earlier requests. ``item_history`` holds the user's earlier train clicks. Events are written in a
seeded random order.
"""
import time
from typing import Callable, Optional

import numpy as np
import pandas as pd

from tfrec_towers.data.writer import AGE_BUCKETS, age_bucket, check_out_dir, past_items, write_log_dataset

__all__ = ["DEVICES", "GENRES", "GENRE_WORDS", "generate_synthetic"]


GENRE_WORDS = {
    "Action": ("Fury", "Strike", "Bullet", "Vengeance", "Mission", "Fist", "Blaze", "Warrior"),
    "Adventure": ("Quest", "Island", "Treasure", "Journey", "Voyage", "Lost", "Expedition", "Jungle"),
    "Animation": ("Bunny", "Toon", "Pixel", "Kitten", "Bubble", "Puppy", "Rainbow", "Cartoon"),
    "Comedy": ("Wacky", "Party", "Crazy", "Oops", "Laugh", "Silly", "Prank", "Buddies"),
    "Crime": ("Heist", "Mob", "Detective", "Gangster", "Alibi", "Vault", "Witness", "Ransom"),
    "Documentary": ("Planet", "History", "Inside", "Story", "Truth", "Nature", "Life", "Archive"),
    "Drama": ("Tears", "Family", "Promise", "Silence", "Winter", "Letters", "Farewell", "Heart"),
    "Fantasy": ("Sorcerer", "Kingdom", "Dragon", "Enchanted", "Elven", "Crown", "Spell", "Realm"),
    "Horror": ("Haunted", "Blood", "Nightmare", "Curse", "Zombie", "Scream", "Crypt", "Shadow"),
    "Romance": ("Love", "Kiss", "Paris", "Wedding", "Sweetheart", "Valentine", "Darling", "Summer"),
    "Sci-Fi": ("Galaxy", "Robot", "Alien", "Cyber", "Quantum", "Star", "Android", "Orbit"),
    "Thriller": ("Conspiracy", "Pursuit", "Deadline", "Hostage", "Suspect", "Trap", "Paranoia", "Edge"),
}
GENRES = tuple(GENRE_WORDS)
OCCUPATIONS = ("student", "engineer", "artist", "doctor", "educator", "writer", "programmer", "retired",
               "salesman", "other")
DEVICES = ("mobile", "desktop", "tv")
LATENT_DIM = 8

_DEVICE_SHARE = (0.55, 0.3, 0.15)
_START = 1_704_067_200  # 2024-01-01 UTC: a fixed origin keeps the records reproducible
_DAY = 86_400
# Click logit = 2.5 affinity + 1.0 context + 0.25 log popularity: affinity dominates (its standard
# deviation is about 2.5 nats), so user and item features carry most of the signal; context and
# popularity are clearly visible but secondary.
_AFFINITY_SCALE = 2.5
_CONTEXT_SCALE = 1.0
_POPULARITY_SCALE = 0.25
# Shown items: a third by popularity (Zipf, weight 1 / rank), a third uniform, a third by the logging
# recommender's noisy guess of the user's taste. Without that third, shown sets of random items rarely
# hold a user's favourites and popularity alone ranks test clicks about as well as the true taste.
_EXPOSURE_SHARES = (1 / 3, 1 / 3, 1 / 3)
_GUESS_NOISE = 0.5


def _embed(rng: np.random.Generator, rows: int, scale: float) -> np.ndarray:
    return rng.normal(0.0, scale, (rows, LATENT_DIM))


def _users(rng: np.random.Generator, num_users: int):
    """User profiles, latent vectors and preferred devices."""
    age = rng.integers(15, 70, num_users)
    bucket = age_bucket(age)
    gender = rng.choice(np.array(["M", "F"], dtype=object), num_users)
    occupation = rng.integers(0, len(OCCUPATIONS), num_users)
    zip_code = rng.integers(0, 100_000, num_users)
    # Three attribute embeddings of variance 1/3 each: the user vector has about unit variance per dim.
    latent = (_embed(rng, len(AGE_BUCKETS), 3 ** -0.5)[pd.Index(AGE_BUCKETS).get_indexer(bucket)]
              + _embed(rng, 2, 3 ** -0.5)[(gender == "F").astype(int)]
              + _embed(rng, len(OCCUPATIONS), 3 ** -0.5)[occupation]
              + _embed(rng, num_users, 0.5))
    device = rng.choice(len(DEVICES), num_users, p=_DEVICE_SHARE)
    users = pd.DataFrame({
        "user_id": [str(i + 1) for i in range(num_users)],
        "user_age": age.astype(np.int64),
        "user_age_bucket": bucket,
        "user_gender": gender,
        "user_occupation": np.asarray(OCCUPATIONS, dtype=object)[occupation],
        "user_zip_prefix": [f"{z:05d}"[:3] for z in zip_code],
    })
    return users, latent, device


def _items(rng: np.random.Generator, num_items: int):
    """Item catalog, latent vectors, genre weights (rows sum to 1) and popularity logits."""
    genre_latent = _embed(rng, len(GENRES), 1.0)
    genre_weights = np.zeros((num_items, len(GENRES)))
    titles, genres = [], []
    for i in range(num_items):
        own = rng.choice(len(GENRES), rng.choice([1, 2, 3], p=[0.5, 0.35, 0.15]), replace=False)
        genre_weights[i, own] = 1.0 / len(own)
        words = [rng.choice(GENRE_WORDS[GENRES[g]]) for g in rng.choice(own, rng.integers(2, 5))]
        titles.append(" ".join(words))
        genres.append([GENRES[g] for g in sorted(own)])
    latent = genre_weights @ genre_latent + _embed(rng, num_items, 0.5)
    popularity = -np.log1p(rng.permutation(num_items))  # Zipf: weight 1 / rank
    year = rng.integers(1960, 2024, num_items)
    items = pd.DataFrame({
        "item_id": [str(i + 1) for i in range(num_items)],
        "item_title": titles,
        "item_genres": genres,
        "item_year": pd.array(np.where(rng.random(num_items) < 0.05, None, year), dtype="Int64"),  # 5% unknown
    })
    return items, latent, genre_weights, popularity


def _requests(rng: np.random.Generator, num_users: int, num_requests: int, preferred_device: np.ndarray):
    """(user, timestamp, device) of each request, grouped by user in time order."""
    activity = rng.lognormal(0.0, 0.75, num_users)
    counts = 2 + rng.multinomial(num_requests - 2 * num_users, activity / activity.sum())
    user = np.repeat(np.arange(num_users), counts)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    new_session = rng.random(num_requests) < 0.3
    new_session[first] = True
    gap = np.where(new_session, 1_800 + rng.exponential(2 * _DAY, num_requests), 5 + rng.exponential(60, num_requests))
    gap[first] = rng.uniform(0, 60 * _DAY, num_users)  # the user's first request
    step = np.ceil(gap).astype(np.int64)
    elapsed = np.cumsum(step)  # over all users: restart it at each user's first request
    timestamp = _START + elapsed - np.repeat(elapsed[first] - step[first], counts)
    # A session is on the user's usual device 70% of the time, otherwise on any device.
    session = np.cumsum(new_session) - 1
    usual = rng.random(session[-1] + 1) < 0.7
    other = rng.choice(len(DEVICES), session[-1] + 1, p=_DEVICE_SHARE)
    device = np.where(usual[session], preferred_device[user], other[session])
    return user, timestamp, device


def _show_and_click(rng: np.random.Generator, user_latent, item_latent, genre_weights, popularity,
                    user, timestamp, device, exposures: int):
    """Items shown per request [R, exposures], and the position of the clicked one [R]."""
    num_items = len(item_latent)
    # Shown: sampled without replacement (Gumbel top-k) from a mixture of popularity, uniform, and
    # the logging recommender's guess of the user's taste (the true latent vector plus noise).
    guess = (user_latent + rng.normal(0.0, _GUESS_NOISE, user_latent.shape)) @ item_latent.T / np.sqrt(LATENT_DIM)
    guess = np.exp(_AFFINITY_SCALE * guess)
    share_popular, share_uniform, share_guess = _EXPOSURE_SHARES
    mix = (share_popular * np.exp(popularity) / np.exp(popularity).sum() + share_uniform / num_items
           + share_guess * guess / guess.sum(axis=1, keepdims=True))  # [users, items]
    shown = np.empty((len(user), exposures), dtype=np.int64)
    for lo in range(0, len(user), 4096):  # in chunks: keys are [requests, items]
        users = user[lo:lo + 4096]
        keys = np.log(mix[users]) + rng.gumbel(size=(len(users), num_items))
        shown[lo:lo + 4096] = np.argpartition(-keys, exposures - 1, axis=1)[:, :exposures]
    # Clicked: softmax over affinity + context (device and part of day shift genre preferences) + popularity.
    device_taste = rng.normal(0.0, 1.0, (len(DEVICES), len(GENRES)))
    daypart_taste = rng.normal(0.0, 0.5, (4, len(GENRES)))
    daypart = (timestamp // 3600) % 24 // 6
    affinity = np.einsum("rk,rek->re", user_latent[user], item_latent[shown]) / np.sqrt(LATENT_DIM)
    context = np.einsum("rg,reg->re", device_taste[device] + daypart_taste[daypart], genre_weights[shown])
    logits = _AFFINITY_SCALE * affinity + _CONTEXT_SCALE * context + _POPULARITY_SCALE * popularity[shown]
    clicked = np.argmax(logits + rng.gumbel(size=logits.shape), axis=1)
    return shown, clicked


def generate_synthetic(out_dir: str, num_users: int = 1000, num_items: int = 500, num_requests: int = 20000,
                       exposures_per_request: int = 10, history_len: int = 20, seed: int = 0,
                       num_shards: int = 2, overwrite: bool = False,
                       progress: Optional[Callable[[str], None]] = print) -> dict:
    """Generate synthetic exposure logs into ``out_dir``; returns the metadata.

    Defaults give about 190,000 train events (19,000 clicks) and 1,000 test clicks in a few seconds:
    enough for a two-tower model to learn the hidden preferences in a few epochs on a laptop CPU.
    Every user needs one train and one test request, so ``num_requests >= 2 * num_users``.
    """
    if num_requests < 2 * num_users:
        raise ValueError(f"num_requests ({num_requests}) must be at least 2 * num_users ({2 * num_users}): "
                         "every user needs one train and one test request")
    if not 1 <= exposures_per_request <= num_items:
        raise ValueError(f"exposures_per_request must be in [1, num_items={num_items}], got {exposures_per_request}")
    check_out_dir(out_dir, overwrite)
    progress = progress or (lambda message: None)
    started = time.time()
    rng = np.random.default_rng(seed)
    users, user_latent, preferred_device = _users(rng, num_users)
    items, item_latent, genre_weights, popularity = _items(rng, num_items)
    user, timestamp, device = _requests(rng, num_users, num_requests, preferred_device)
    shown, clicked = _show_and_click(rng, user_latent, item_latent, genre_weights, popularity,
                                     user, timestamp, device, exposures_per_request)

    # One event per shown item. Requests are grouped by user in time order, so a user's last request
    # is the one before the next user's first; of a test request only the click is kept.
    last = np.append(user[1:] != user[:-1], True)
    request = np.repeat(np.arange(num_requests), exposures_per_request)
    label = (np.arange(exposures_per_request) == clicked[:, None]).ravel()
    keep = ~last[request] | label
    request, item, label = request[keep], shown.ravel()[keep], label[keep]
    is_test = last[request]
    time_rank = np.empty(num_requests, dtype=np.int64)  # request IDs count requests in time order
    time_rank[np.lexsort((user, timestamp))] = np.arange(num_requests)
    events = pd.concat([
        pd.DataFrame({
            "user_id": users["user_id"].to_numpy()[user[request]],
            "item_id": items["item_id"].to_numpy()[item],
            "timestamp": timestamp[request],
            "label": label.astype(np.int64),
            "rating": label.astype(np.float64),
            "request_id": [f"r{r:07d}" for r in time_rank[request]],
            "device": np.asarray(DEVICES, dtype=object)[device[request]],
        }),
        users.iloc[user[request], 1:].reset_index(drop=True),
        items.iloc[item, 1:].reset_index(drop=True),
    ], axis=1)
    events["item_history"] = past_items(events["user_id"], events["item_id"], events["timestamp"],
                                        label & ~is_test, history_len)
    progress(f"generated {num_requests} requests of {num_users} users over {num_items} items "
             f"in {time.time() - started:.1f}s")
    events = events.iloc[rng.permutation(len(events))]
    test_in_order = is_test[events.index.to_numpy()]
    metadata = {"source": "synthetic", "protocol": "last-request-per-user", "seed": seed,
                "num_users": num_users, "history_len": history_len, "num_requests": num_requests,
                "exposures_per_request": exposures_per_request, "genres": list(GENRES), "devices": list(DEVICES)}
    return write_log_dataset(out_dir, events[~test_in_order], events[test_in_order], items, metadata,
                             num_shards=num_shards, overwrite=overwrite, progress=progress)
