"""Streams between the commands: moving bytes (streams), the compressed stream (frames), digests,
and how the commands of a pipeline tell each other that a stream really ended (pipeline)."""
