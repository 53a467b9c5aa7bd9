// Prints a YAML file as JSON, for the deploy tests (tests/tests/deploy_*.rs) to read
// docker-compose.yml with the same YAML 1.2 parser dclint validates it with.
import { readFileSync } from 'node:fs';
import { parse } from 'yaml';

process.stdout.write(JSON.stringify(parse(readFileSync(process.argv[2], 'utf8'))));
