"""Fine-tuning BiomedCLIP on image-caption pairs with the DHN-NCE loss, and retrieval evaluation."""
