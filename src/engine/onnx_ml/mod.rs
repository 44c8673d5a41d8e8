//! ONNX-ML (`ai.onnx.ml`) operators of our own, for the classical models (scikit-learn,
//! XGBoost, LightGBM) that exporters write with them.
//!
//! They are registered into tract's ONNX loader as custom operators under the ONNX op names,
//! replacing tract's own where it has one (its TreeEnsembleClassifier is slow and misreads
//! BRANCH_GTE nodes; its Normalizer and LinearClassifier differ from onnxruntime on MAX norms and
//! binary models), so the rest of each graph still runs in tract and is optimised as before.
//! Registering beats rewriting nodes after parsing: tract would otherwise fail to type the
//! graph at the first operator it does not know, before any rewrite could run.
//!
//! Semantics follow onnxruntime, the engine exported models are checked against, down to its
//! handling of two-class models with a single score column; each module says where that
//! departs from the ONNX text.

pub(crate) mod adapter;
mod attrs;
mod encoders;
mod features;
mod forest;
mod linear;
mod post;
mod svm;
mod trees;

/// tract's ONNX framework with our ONNX-ML operators registered.
pub fn onnx() -> tract_onnx::Onnx {
    let mut framework = tract_onnx::onnx();
    let ops = &mut framework.op_register;
    ops.insert("TreeEnsembleClassifier", trees::classifier);
    ops.insert("TreeEnsembleRegressor", trees::regressor);
    ops.insert("TreeEnsemble", trees::tree_ensemble);
    ops.insert("LinearClassifier", linear::classifier);
    ops.insert("LinearRegressor", linear::regressor);
    ops.insert("SVMClassifier", svm::classifier);
    ops.insert("SVMRegressor", svm::regressor);
    ops.insert("Scaler", features::scaler);
    ops.insert("Normalizer", features::normalizer);
    ops.insert("Binarizer", features::binarizer);
    ops.insert("Imputer", features::imputer);
    ops.insert("OneHotEncoder", encoders::one_hot);
    ops.insert("LabelEncoder", encoders::label_encoder);
    ops.insert("ArrayFeatureExtractor", encoders::array_feature_extractor);
    ops.insert("FeatureVectorizer", encoders::feature_vectorizer);
    ops.insert("ZipMap", encoders::zipmap);
    framework
}
