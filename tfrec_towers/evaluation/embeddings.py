"""A trained run's towers applied to logs: the catalog's item embeddings and the events' query
embeddings, which evaluation, export, offline mining and the embedding report all start from."""
import numpy as np

from tfrec_towers.config import Config
from tfrec_towers.data import reader
from tfrec_towers.data.inputs import decode, first_occurrences, parse_spec, positives, scan_logs


__all__ = ["embed_catalog", "embed_events"]


def embed_catalog(model, config: Config, items_pattern: str, progress=print):
    """Item IDs (unique, first occurrence kept) and their candidate-tower embeddings."""
    spec = config.features.parse_spec("candidate")
    ids, embeddings = [], []

    def on_batch(parsed):
        inputs = config.features.prepare(parsed)
        ids.append(decode(inputs[config.features.item_id].numpy()))
        embeddings.append(model.candidate_tower(inputs).numpy())

    scan_logs(config, reader.list_files(items_pattern), spec, on_batch, progress=progress)
    ids, embeddings = np.concatenate(ids), np.concatenate(embeddings)
    first = first_occurrences(ids)
    return ids[first], embeddings[first]


def embed_events(model, config: Config, pattern: str, progress=print):
    """(user ids, true item ids, query embeddings) of the positive events in ``pattern``."""
    user_key, item_key = config.data.user_id, config.features.item_id
    spec = parse_spec(config, user_key)
    users, items, embeddings = [], [], []

    def on_batch(parsed):
        inputs = config.features.prepare(parsed)
        users.append(decode(parsed[user_key].numpy()))
        items.append(decode(inputs[item_key].numpy()))
        embeddings.append(model.query_tower(inputs).numpy())

    scan_logs(config, reader.list_files(pattern), spec, on_batch, keep=positives(config), progress=progress)
    return np.concatenate(users), np.concatenate(items), np.concatenate(embeddings)
