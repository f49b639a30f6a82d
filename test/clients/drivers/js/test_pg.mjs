// node-postgres writing to a protected table (DRV_TABLE) as the writer:
// rows 1-3 into the table, rows 4-6 through the decrypting view, then an
// UPDATE of each, all with named prepared statements.  DRV_TYPED=1 writes
// "$n::type" parameters (the cast to the column's original type is in the
// SQL), otherwise untyped ones (node-postgres sends every parameter as text
// of unknown type).  The Python side reads the rows back and compares.
import pg from 'pg';

const spec = JSON.parse(process.env.DRV_SPEC);
const tbl = process.env.DRV_TABLE;
const typed = process.env.DRV_TYPED === '1';
const cols = spec.cols;
const types = ['int', 'int', ...spec.types];

function ph(i, type) { return typed ? `$${i}::${type}` : `$${i}`; }
function insertSql(target) {
  const names = ['id', 'tenant', ...cols];
  return `INSERT INTO ${target} (${names.join(', ')}) VALUES (${names.map((_, i) => ph(i + 1, types[i])).join(', ')})`;
}
function param(v, i) {
  // jsonb: its JSON text (node-postgres would turn a JS array into an SQL array)
  if (i === 11 && v !== null) return JSON.stringify(v);
  return v;
}
function updateSql(target, changes) {
  const keys = Object.keys(changes);
  const names = ['id', 'tenant', ...cols];
  const sets = keys.map((k, i) => `${k} = ${ph(i + 1, types[names.indexOf(k)])}`);
  return `UPDATE ${target} SET ${sets.join(', ')} WHERE id = $${keys.length + 1}`;
}

const client = new pg.Client();
await client.connect();
try {
  for (const [n, row] of spec.rows.entries()) {
    const target = n < 3 ? tbl : `${tbl}_decrypted`;
    await client.query({ name: `ins_${target}`, text: insertSql(target), values: row.map(param) });
  }
  for (const [key, target] of [['upd_table', tbl], ['upd_view', `${tbl}_decrypted`]]) {
    const [id, changes] = spec[key];
    await client.query({ name: `upd_${target}`, text: updateSql(target, changes), values: [...Object.values(changes), id] });
  }
} catch (e) {
  console.log(`node-postgres error: ${e.code} ${e.message}`);
  process.exitCode = 1;
} finally {
  await client.end();
}
