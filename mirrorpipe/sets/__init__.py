"""Volume sets: the manifest formats (manifests), writing, finding and checking a set (volumes),
reading it back (setreader), parity volumes (erasure, parity) and replacements for lost ones."""
