"""Private helpers every floor may use: atomic writes, text decoding errors that name the file, logging,
interruptions, lazy exports and the moved-module aliases. Nothing here imports the rest of culnig_ext."""
