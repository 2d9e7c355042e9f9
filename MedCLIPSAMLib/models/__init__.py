"""Model loading: BiomedCLIP (open_clip), SAM backends, and the download catalog."""
