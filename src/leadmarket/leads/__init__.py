"""Lead intake: validation, consent evidence, encryption, quality and previews."""
