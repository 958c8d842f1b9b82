"""The double-entry ledger: wallets, holds, settlements, fees (M5)."""
