"""polydub: dub videos into other languages at volume.

The core package holds what every tier shares: settings, errors, logging and the service clients.
The tiers are subpackages linked from the top-level folders: polydub.api, polydub.orchestrator,
polydub.export.
"""

__version__ = "0.1.0"
