"""distillery.tuning"""
