"""Development and demo code, apart from the pipeline: embedded local backends (``local``:
moto, Redis; ``kinesalite``), the app's write paths as a simulator (``appsim``), and
``feedpipe up`` with its demo. Nothing outside ``feedpipe.dev`` imports it but the CLI's
``up`` command; it needs the ``local`` extra."""
