"""Volume sets: names of volumes and VolumeKey (names), the manifest formats (manifests), writing a
set (writer), finding one (finder) and checking it (volumeset), reading it back (reader, verifier), parity
volumes (erasure, parity) and replacements for lost ones."""
