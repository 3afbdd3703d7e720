"""distillery.recipe"""
