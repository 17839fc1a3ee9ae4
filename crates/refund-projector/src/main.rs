mod generate;

fn main() {}
