"""Server-rendered pages: patient portal, clinician view, network explorer (no build step)."""
