"""The on-disk cache of encoded examples, and how its entries are found or encoded.

One safetensors file per entry, named by the digest of its key. A key holds everything the tensors depend on
(a latent: the image file's path, byte size and mtime, the bucket size, the encoders' ``cache_key`` and the
run seed; a text embedding: the caption and ``cache_key``; a mask: the mask file and bucket size), so a
changed input looks up a new name and only that entry is encoded again. Files are written atomically, so an
interrupted caching run leaves whole entries behind and the next run goes on from there. ``index.json``
lists the entries (kind and source) for people and tools; lookups never need it. A store lives in
``<directory>/cache/studio_<family>/``, beside diffusion-pipe's own ``cache/<model>/``, which it never touches.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from trainers.files import atomic_write_bytes, atomic_write_json
from trainers.native import archive as tar
from trainers.native.data import Item, load_mask, load_pixels
from trainers.native.families.base import Family, TextBatch

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
INDEX = "index.json"
KINDS = ("latent", "text", "mask")


def store_folder(root: Path, family_name: str) -> Path:
    """The studio's cache folder of a ``[[directory]]`` folder for one model family."""
    return Path(root) / "cache" / f"studio_{family_name}"


def entry_digest(kind: str, *parts) -> str:
    """The name of an entry: a digest of its kind, the format version and every value it depends on."""
    text = json.dumps([FORMAT_VERSION, kind, *[str(p) for p in parts]], ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:40]


def digest_seed(digest: str) -> int:
    """A generator seed derived from an entry digest (so each entry's random draws are its own)."""
    return int(digest[:15], 16)


class EntryStore:
    """Entries of one cache folder: ``<folder>/<kind>/<digest[:2]>/<digest>.safetensors``."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._added: dict[str, dict] = {}

    def path(self, kind: str, digest: str) -> Path:
        """Where the entry ``digest`` of ``kind`` lives."""
        if kind not in KINDS:
            raise ValueError(f"unknown cache entry kind {kind!r}")
        return self.folder / kind / digest[:2] / f"{digest}.safetensors"

    def has(self, kind: str, digest: str) -> bool:
        """Whether the entry is on disk."""
        return self.path(kind, digest).is_file()

    def load(self, kind: str, digest: str) -> dict[str, torch.Tensor] | None:
        """The entry's tensors, or None when it is missing or unreadable (it is then encoded again)."""
        path = self.path(kind, digest)
        if not path.is_file():
            return None
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as exc:
            log.warning("cache entry %s is unreadable (%s): encoding it again", path, exc)
            return None

    def save(self, kind: str, digest: str, tensors: dict[str, torch.Tensor], source: str) -> None:
        """Write an entry atomically; ``source`` (file or caption) goes to its header and to the index."""
        data = save({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()},
                    metadata={"kind": kind, "source": source, "format": str(FORMAT_VERSION)})
        atomic_write_bytes(self.path(kind, digest), data)
        self._added[digest] = {"kind": kind, "source": source}

    def clear(self) -> None:
        """Remove every entry (``regenerate_cache``)."""
        if self.folder.exists():
            shutil.rmtree(self.folder)
        self._added.clear()

    def write_index(self) -> None:
        """Merge the entries written by this process into ``index.json`` (dropping entries whose file is gone)."""
        if not self._added and not (self.folder / INDEX).is_file():
            return
        entries = dict(self._read_index())
        entries.update(self._added)
        entries = {d: e for d, e in entries.items() if e.get("kind") in KINDS and self.has(e["kind"], d)}
        atomic_write_json(self.folder / INDEX, {"version": FORMAT_VERSION, "entries": entries})
        self._added.clear()

    def _read_index(self) -> dict[str, dict]:
        path = self.folder / INDEX
        if not path.is_file():
            return {}
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            log.warning("%s is unreadable: rebuilding it from this run's entries", path)
            return {}
        entries = data.get("entries") if isinstance(data, dict) else None
        return entries if isinstance(entries, dict) else {}


@dataclass
class CacheStats:
    """What ``build_cache`` encoded and what it found on disk."""

    images_encoded: int = 0
    images_loaded: int = 0
    captions_encoded: int = 0
    captions_loaded: int = 0
    masks_made: int = 0
    masks_loaded: int = 0

    def summary(self) -> str:
        """One log line."""
        text = (f"images: {self.images_encoded} encoded, {self.images_loaded} from cache; "
                f"captions: {self.captions_encoded} encoded, {self.captions_loaded} from cache")
        if self.masks_made or self.masks_loaded:
            text += f"; masks: {self.masks_made} made, {self.masks_loaded} from cache"
        return text


def _to_tensor(images) -> torch.Tensor:
    arr = np.stack([np.asarray(im, dtype=np.float32) for im in images])
    # diffusion-pipe: to_tensor (x / 255), then * 2 - 1.
    return torch.from_numpy(arr).permute(0, 3, 1, 2) / 255.0 * 2.0 - 1.0


class Stores:
    """The entry store of each item (beside its directory, or one shared folder), or none at all."""

    def __init__(self, family_name: str, items: list[Item], cache_dir: Path | None, persist: bool):
        self.family_name, self.cache_dir, self.persist = family_name, cache_dir, persist
        self.by_folder: dict[Path, EntryStore] = {}
        for item in items:
            self.get(item)

    def get(self, item: Item) -> EntryStore | None:
        """The store of an item's entries (None when nothing is persisted)."""
        if not self.persist:
            return None
        if self.cache_dir is None and item.root is None:
            raise ValueError(f"{item.path}: the item has no [[directory]] folder to cache beside; pass cache_dir")
        folder = Path(self.cache_dir) if self.cache_dir is not None else store_folder(item.root, self.family_name)
        return self.by_folder.setdefault(folder, EntryStore(folder))

    def all(self) -> list[EntryStore]:
        """Every store in use."""
        return list(self.by_folder.values())


def _chunks(values: list, size: int) -> list[list]:
    return [values[i:i + size] for i in range(0, len(values), max(1, size))]


def _load_first(stores: list[EntryStore], kind: str, digest: str) -> dict[str, torch.Tensor] | None:
    for store in stores:
        found = store.load(kind, digest)
        if found is not None:
            return found
    return None


def cache_texts(family: Family, items: list[Item], stores: Stores, key: str, batch_size: int,
                stats: CacheStats) -> tuple[TextBatch, dict[str, int]]:
    """The text table (every caption once, sorted, "" included) and each caption's row; loads what is cached."""
    owners: dict[str, list[EntryStore]] = {"": stores.all()}  # the empty caption: uncond_fraction
    for item in items:
        store = stores.get(item)
        owners.setdefault(item.caption, [])
        if store is not None and store not in owners[item.caption]:
            owners[item.caption].append(store)
    captions = sorted(owners)
    digests = {c: entry_digest("text", c, key) for c in captions}
    rows = {c: found for c in captions if (found := _load_first(owners[c], "text", digests[c])) is not None}
    stats.captions_loaded += len(rows)
    for chunk in _chunks([c for c in captions if c not in rows], batch_size):
        encoded = family.encode_prompts(chunk)
        for i, caption in enumerate(chunk):
            rows[caption] = {"embeds": encoded.embeds[i].cpu(), "mask": encoded.mask[i].cpu()}
            if encoded.pooled is not None:
                rows[caption]["pooled"] = encoded.pooled[i].cpu()
            for store in owners[caption]:
                store.save("text", digests[caption], rows[caption], caption)
        stats.captions_encoded += len(chunk)
    pooled = [rows[c].get("pooled") for c in captions]
    text = TextBatch.stack([rows[c]["embeds"] for c in captions], [rows[c]["mask"] for c in captions],
                           None if any(p is None for p in pooled) else pooled)
    return text, {c: i for i, c in enumerate(captions)}


@dataclass
class Entry:
    """One latent (image x bucket size) or mask to load or make."""

    item: Item
    digest: str
    store: EntryStore | None
    noise_seed: int = 0


def _file_id(path: Path) -> tuple[str, int, int]:
    inside = None if path.exists() else tar.split(path)
    if inside is not None:  # a .tar member: the archive's version, the member's name
        stat = inside[0].stat()
        return f"{inside[0].resolve()}/{inside[1]}", stat.st_size, stat.st_mtime_ns
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


def latent_entries(items: list[Item], stores: Stores, key: str, seed: int) -> dict[tuple, Entry]:
    """One latent entry per (image, bucket size), shared by every caption of that image."""
    entries: dict[tuple, Entry] = {}
    for item in items:
        if (item.path, item.size) not in entries:
            file_id = _file_id(item.path)
            digest = entry_digest("latent", *file_id, *item.size, key, seed)
            # The posterior draw depends on the image's identity and the run seed only: a touched file or
            # another caching batch size gives the same latent.
            noise_seed = digest_seed(entry_digest("noise", file_id[0], *item.size, seed))
            entries[(item.path, item.size)] = Entry(item, digest, stores.get(item), noise_seed)
    return entries


def mask_entries(items: list[Item], stores: Stores) -> dict[tuple, Entry]:
    """One mask entry per (mask file, bucket size)."""
    entries: dict[tuple, Entry] = {}
    for item in items:
        if item.mask is not None and (item.mask, item.size) not in entries:
            digest = entry_digest("mask", *_file_id(item.mask), *item.size)
            entries[(item.mask, item.size)] = Entry(item, digest, stores.get(item))
    return entries


def _encode_latents(family: Family, pending: list[Entry], batch_size: int, workers: int,
                    on_chunk: Callable[[list[Entry], torch.Tensor], None]) -> None:
    """VAE-encode ``pending`` in chunks; images of the next chunk load in threads meanwhile."""
    chunks = _chunks(pending, batch_size)
    if not chunks:
        return
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        loading = [pool.submit(load_pixels, e.item) for e in chunks[0]]
        for i, chunk in enumerate(chunks):
            images = [f.result() for f in loading]
            loading = [pool.submit(load_pixels, e.item) for e in chunks[i + 1]] if i + 1 < len(chunks) else []
            generators = [torch.Generator(device="cpu").manual_seed(e.noise_seed) for e in chunk]
            on_chunk(chunk, family.encode_images(_to_tensor(images), generator=generators).cpu())


def cache_latents(family: Family, entries: dict[tuple, Entry], batch_size: int, workers: int,
                  stats: CacheStats, progress: Callable[[int, int], None]) -> dict[tuple, torch.Tensor]:
    """Latents of the entries: loaded when cached, else encoded (each with its own generator) and saved."""
    latents: dict[tuple, torch.Tensor] = {}
    pending: list[Entry] = []
    for k, entry in entries.items():
        found = entry.store.load("latent", entry.digest) if entry.store else None
        if found is None:
            pending.append(entry)
        else:
            latents[k] = found["latent"]
    stats.images_loaded += len(latents)
    progress(len(latents), len(entries))

    def keep(chunk: list[Entry], encoded: torch.Tensor) -> None:
        for entry, latent in zip(chunk, encoded, strict=True):
            latents[(entry.item.path, entry.item.size)] = latent
            if entry.store:
                entry.store.save("latent", entry.digest, {"latent": latent}, str(entry.item.path))
        stats.images_encoded += len(chunk)
        progress(len(latents), len(entries))

    _encode_latents(family, pending, batch_size, workers, keep)
    return latents


def cache_masks(entries: dict[tuple, Entry], stats: CacheStats) -> dict[tuple, torch.Tensor]:
    """Masks (uint8, bucket size) of the entries: loaded when cached, else made from the mask files and saved."""
    masks: dict[tuple, torch.Tensor] = {}
    for k, entry in entries.items():
        found = entry.store.load("mask", entry.digest) if entry.store else None
        if found is not None:
            masks[k] = found["mask"]
            stats.masks_loaded += 1
            continue
        masks[k] = torch.from_numpy(load_mask(entry.item))
        if entry.store:
            entry.store.save("mask", entry.digest, {"mask": masks[k]}, str(entry.item.mask))
        stats.masks_made += 1
    return masks
