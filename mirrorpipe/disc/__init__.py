"""Discs: media presets (media), ISO images (iso) with their README.TXT (discreadme), and
burning through xorriso (optical)."""
