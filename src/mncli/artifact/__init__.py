"""The artifact format `mncli/1`: one .safetensors file per stage output, with the manifest as
canonical JSON under the single metadata key "mncli" and a pretty copy in NAME.manifest.json.
See docs/artifact-format.md.

    save_artifact(path, tensors, manifest) -> manifest      atomic; adds content_sha256; writes the sidecar
    load_artifact(path) -> (tensors, manifest)              checks schema and content hash
    read_manifest(path) -> manifest                         header only
    check_output(out, *inputs)                              BadInput when OUT would overwrite an input
    verify_artifact(path) -> report                         hash, schema, tensors, sidecar, parents, lineage
    file_report(path) -> dict                               stored bytes per tensor and per weight
    pack_bits / unpack_bits                                 sub-byte codes <-> uint8
    codec.encode_state / codec.decode_state                 deployable storage of a state dict
"""

from mncli.artifact import codec
from mncli.artifact.hashing import content_sha256, file_sha256
from mncli.artifact.io import (
    check_output,
    file_report,
    load_artifact,
    read_manifest,
    save_artifact,
    sidecar_path,
)
from mncli.artifact.manifest import FORMAT, lineage_from, new_manifest, parent_entry
from mncli.artifact.packing import pack_bits, unpack_bits
from mncli.artifact.verify import verify_artifact

__all__ = [
    "FORMAT",
    "check_output",
    "codec",
    "content_sha256",
    "file_sha256",
    "file_report",
    "lineage_from",
    "load_artifact",
    "new_manifest",
    "pack_bits",
    "parent_entry",
    "read_manifest",
    "save_artifact",
    "sidecar_path",
    "unpack_bits",
    "verify_artifact",
]
